"""A project of its own: a tiny MLP and a scikit-learn dataset, searched by esam through import paths."""
