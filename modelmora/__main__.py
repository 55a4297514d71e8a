from modelmora.cli import main

main()
