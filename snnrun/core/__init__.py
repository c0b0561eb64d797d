"""The spiking core: neurons, surrogates, encoders, architectures, losses and operation counts.

Plain PyTorch: nothing here reads a config or imports Hydra.
"""
