"""A loopback fake of the Compute Engine v1 REST API for the `gcp` provider tests; see tests/gcp/fake.py."""
