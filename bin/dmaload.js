#!/usr/bin/env node
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
// The command is done: a thread stuck in the kernel on storage that does not answer must not keep the process alive.
setTimeout(() => process.exit(), 2000).unref();
