"""The README and docs: their examples run and their claims hold."""
