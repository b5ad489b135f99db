"""Dataset readers (MedMNIST-style npz, image folders with a labels CSV), the catalogue of
known datasets (`datasets.yaml`) and validation of user uploads before they are stored."""
