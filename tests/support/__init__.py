"""What the tests share: fakes, gateways in the test's loop or as processes, stores and
waiting. Test modules and conftest files import from here, never from each other."""
