"""BERT and GPT models, standard and unit-scaled."""
