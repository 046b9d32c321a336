"""Stageflow's web pages (issue 14): starter/web/pages.py says what is where."""
