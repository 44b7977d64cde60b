"""Revocation: CRL validation and indexing (pure), fetching (treq), refresh services."""
