"""Labels: matching target class names to a pretrained classifier's rows, label-mapping files, and a model's label names."""
