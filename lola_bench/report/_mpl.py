"""matplotlib, imported on first use with the non-interactive Agg backend (reports are rendered headless)."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
