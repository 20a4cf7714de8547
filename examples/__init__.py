"""Experiment specs and runners that reproduce the CNN (CIFAR-10) and RNN/LSTM (NusaX-Senti) studies."""
