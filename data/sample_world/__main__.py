"""python -m data.sample_world --out WORLD [options]; see data/sample_world/__init__.py."""

from data.sample_world.world import main

if __name__ == "__main__":
    main()
