"""Models: XGBoost BDT, metadata MLP, ResNet18 (+/- metadata), convolutional autoencoder, parametric UMAP."""
