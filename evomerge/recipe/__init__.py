"""Recipes: the declarative description of one merged model, and how to build and score it."""
