from smalltolarge.cli import main

main()
