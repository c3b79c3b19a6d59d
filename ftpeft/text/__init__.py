"""Text classification: arguments, data loading and tokenising, the offline demo tweets, model loading."""
