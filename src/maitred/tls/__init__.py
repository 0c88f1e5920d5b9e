"""TLS: termination on listeners (SNI, ALPN, live certificate reload) and TLS to servers."""
