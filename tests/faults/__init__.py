"""Fault-injection tests: real daemon processes, real servers, exact counts."""
