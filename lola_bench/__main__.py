"""``python -m lola_bench ...``: the lola-bench command line (also ``accelerate launch -m lola_bench ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
