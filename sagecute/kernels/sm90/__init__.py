"""Hopper (sm_90a) kernels: INT8 QK / FP8 PV attention forward."""
