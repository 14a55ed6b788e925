"""Least privilege: roles, tenant isolation, SECURITY DEFINER functions."""
