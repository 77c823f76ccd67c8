/*
 * The `orchard` subcommands. Each takes the argv after the subcommand name (argv[0] is the
 * subcommand) and returns the process exit status: 0 ok, 1 failure, 2 usage error.
 * Admin commands open the data directory's store directly.
 */
#ifndef ORCHARD_CLI_H
#define ORCHARD_CLI_H

int cli_init(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_pushcert(int argc, char **argv);
int cli_user(int argc, char **argv);
int cli_apikey(int argc, char **argv);
int cli_config(int argc, char **argv);
int cli_domain(int argc, char **argv);
int cli_reauth(int argc, char **argv);
int cli_profile(int argc, char **argv);

#endif
