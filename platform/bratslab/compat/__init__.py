"""Every use of a dependency's private API, one module per dependency.

Each access states the version it was checked against and the public API that would replace it.
"""
