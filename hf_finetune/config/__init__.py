"""Configuration: the dataclasses a recipe or the command line fills, the recipe parser, and the checks on values, YAML and paths made before any work."""
