"""What a model costs: parameter and FLOP counts per site (`flops`), what one residual channel costs (`hidden`), and
measured latency (`latency`, the one timer that the library's latency budgets and every benchmark use)."""
