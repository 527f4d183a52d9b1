"""Local servers that speak the cloud services' documented protocols, for tests and
benches on a machine that cannot reach the services (see ``base``)."""
