"""The mapping stage: a change and the rulebook make identify and track calls."""
