"""Training with Lightning: the LightningModule (cross-entropy) and its plugins and callbacks."""
