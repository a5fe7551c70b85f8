"""Helpers shared by the LightningModules of every family."""
