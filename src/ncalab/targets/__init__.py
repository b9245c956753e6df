"""Built-in target images, drawn by ncalab.targets.draw."""
