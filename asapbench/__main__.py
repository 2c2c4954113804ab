from asapbench.cli import main

main()
