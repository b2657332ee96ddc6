"""Unidimensional 2PL item response theory: the model, ability estimation and calibration backends."""
