from gateway.cli import main

# Guarded: the image workers' forkserver (files.service) imports the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
