"""The end-to-end client checks (tests/e2e), from the controller, through the
proxy's TLS endpoint, against this scenario's deployment. conftest.py sets
their MATRIX_E2E_* configuration from the inventory and the credentials."""
from test_matrix_e2e import *  # noqa: F401,F403  (fixtures and tests)
