"""The data plane: HTTP/1.1, HTTP/2 and TCP proxying (compiled: see maitred.compiled)."""
