#!/usr/bin/env node
/**
 * The resync CDK app: `npx cdk deploy` (context: `config`, default ../config/resync.yaml;
 * `prefix`, default resync; `sourceBucket`, `alertEmail` optional).
 */
import * as path from 'path';
import { App, Stack } from 'aws-cdk-lib';
import { Resync } from '../lib/resync';

const app = new App();
const context = (key: string): string | undefined => app.node.tryGetContext(key);
const prefix = context('prefix') ?? 'resync';
const stack = new Stack(app, 'Resync', {
  stackName: prefix,
  description: 'resync: reverse-ETL row sync (CDK; same resources as template.yaml)',
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
});
new Resync(stack, 'Resync', {
  configPath: path.resolve(context('config') ?? path.join(__dirname, '..', '..', 'config', 'resync.yaml')),
  stackPrefix: prefix,
  existingSourceBucket: context('sourceBucket'),
  alertEmail: context('alertEmail'),
});
