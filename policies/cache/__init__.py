"""The response cache: exact answers by a canonical key, and a semantic index over them."""
