"""The relay: client side (inside TLS), upstream side (plain TCP to the broker)."""
