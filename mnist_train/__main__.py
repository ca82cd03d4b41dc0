from mnist_train.cli import main

# guarded: spawned helper processes import the main module again and must not run the CLI
if __name__ == "__main__":
    main()
