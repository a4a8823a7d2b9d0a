"""hqlt.kernels"""
