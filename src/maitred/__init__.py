"""maitred: a load balancer and health-check system."""

__version__ = "0.1.0"
