"""Data loading for the recipes: text (Hub, local files, offline demo) and images (see ``images``)."""
