"""Stage 1: run the Kinetics-400 I3D over every clip once and cache clip features in HDF5."""
