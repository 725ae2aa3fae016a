"""The rulebook: YAML rules and the expression language they are written in."""
