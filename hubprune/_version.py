"""hubprune's version: on the ground floor, so that what records it (manifests, provenance, profiles, pushes)
need not import the package facade."""

__version__ = "0.1.0"
