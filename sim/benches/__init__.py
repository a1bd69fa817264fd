"""cocotb benches (one module per unit), run by ``fpgacnn.sim.cocotb_runner``."""
