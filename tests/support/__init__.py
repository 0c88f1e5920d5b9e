"""Helpers shared by the test suite: demo backends as processes, raw HTTP over sockets."""
