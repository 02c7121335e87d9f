"""``lvmae serve``: a local, read-only web app to search an extraction's output and look at
its videos (docs/design.md, "The serve app")."""
