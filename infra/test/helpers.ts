import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { Resync, ResyncProps } from '../lib/resync';

export const REPO = path.join(__dirname, '..', '..');
export const CONFIG = path.join(REPO, 'config', 'resync.yaml');

/** Synthesises the stack without Docker, cargo-lambda or AWS credentials (bundling skipped). */
export function synth(props: Partial<ResyncProps> = {}): Template {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new Stack(app, 'Resync', { env: { account: '123456789012', region: 'us-east-1' } });
  new Resync(stack, 'Resync', { configPath: CONFIG, ...props });
  return Template.fromStack(stack);
}

/** Writes a configuration file into a fresh directory and returns its path. */
export function configFile(text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resync-cdk-'));
  const file = path.join(dir, 'resync.yaml');
  fs.writeFileSync(file, text);
  return file;
}

/** The synthesised CloudFormation of the default configuration, environment-agnostic
 *  (`${AWS::Region}`/`${AWS::AccountId}` stay references, as in template.yaml). */
export function synthTemplate(props: Partial<ResyncProps> = {}): any {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new Stack(app, 'Resync');
  new Resync(stack, 'Resync', { configPath: CONFIG, ...props });
  return Template.fromStack(stack).toJSON();
}
