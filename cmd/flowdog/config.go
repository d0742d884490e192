package main

import (
	"fmt"
	"io"

	"github.com/flowdog/flowdog/internal/config"
)

func cmdConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: flowdog config default | flowdog config check FILE\n")
		return 2
	}
	switch args[0] {
	case "default":
		_, _ = stdout.Write(config.DefaultYAML())
		return 0
	case "check":
		if len(args) != 2 {
			fmt.Fprint(stderr, "usage: flowdog config check FILE\n")
			return 2
		}
		if _, err := config.Load(args[1]); err != nil {
			fmt.Fprintln(stderr, "flowdog:", err)
			return 2
		}
		fmt.Fprintln(stdout, args[1]+": ok")
		return 0
	}
	fmt.Fprintf(stderr, "flowdog config: unknown subcommand %q\n", args[0])
	return 2
}
